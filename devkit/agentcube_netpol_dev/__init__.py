"""agentcube-netpol-dev: the development kit (devkit/pyproject.toml says what is in it)."""
