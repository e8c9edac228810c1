"""The one-shot method of Bender et al. (ICML 2018)."""
