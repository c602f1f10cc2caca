"""Command-line plumbing shared by every entry point (`mdlm-generate`, `mdlm-pretrain`, `mdlm-eval`,
`mdlm-rl`, the benchmarks): `mdlm.cli.errors` turns bad input into one clear line and exit status 2."""
