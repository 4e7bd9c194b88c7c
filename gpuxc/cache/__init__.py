"""The build cache: content-addressed bundles restored before any heavy import."""
