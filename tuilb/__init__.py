"""tuilb: a load balancer with its operations console in the terminal."""

__version__ = "0.1.0"
