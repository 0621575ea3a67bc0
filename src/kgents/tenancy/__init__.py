"""Tenants, plans, API keys and admin authentication (service code: no web or driver imports)."""
