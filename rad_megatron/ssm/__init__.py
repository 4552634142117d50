"""Mamba-2 for the hybrid stack: SSD scans (torch and mamba_ssm), gated RMSNorm, and the mixer module."""
