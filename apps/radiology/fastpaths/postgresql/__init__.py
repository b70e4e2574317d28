"""Django's PostgreSQL engine with a cheaper health check (base.py); settings.py names it for PostgreSQL."""
