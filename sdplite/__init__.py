"""sdplite: Kubernetes device plugins in a few lines of Python, on h2 instead of grpcio."""

__version__ = "0.1.0"
