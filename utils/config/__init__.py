"""The config machinery: the schema of every key, component lookup, overrides and run directories."""
