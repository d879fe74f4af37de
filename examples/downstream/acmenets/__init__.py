"""ACME's own networks: a stand-in for a team's architectures that timm does not have."""
