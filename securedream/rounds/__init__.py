"""CoDream rounds and baselines: what each party does in a round."""
