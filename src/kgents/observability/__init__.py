"""Operations: Prometheus metrics, structured logs and the request observer that feeds both.

Used by the API and the command line only; services never import it (they stay free of
Prometheus and logging set-up), and it imports no adapter.
"""
