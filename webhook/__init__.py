"""agentcube-netpol: network isolation for AgentCube sandboxes."""

__version__ = "0.1.0"
