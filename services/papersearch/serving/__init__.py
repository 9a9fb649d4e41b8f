"""The Ray Serve application: built from settings, described by one Serve config YAML."""
