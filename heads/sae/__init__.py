"""TopK sparse autoencoders on the cache (stage two): `fit-sae`, `sae-eval`, `sae-inspect`.

config (the three configs), model (TopK SAE, sparse training ops, AuxK), data (training rows,
whole or streamed; held-out rows), train (fit-sae), metrics (pinned definitions, k-sweep,
accuracy kept), evaluation (sae-eval), naming (latent names), inspect (retrieval, k-means,
the page's table), artifact (SAELens-layout directories; the `fit-head --features sae`
loader), commands (the CLI). See docs/sae.md.
"""
