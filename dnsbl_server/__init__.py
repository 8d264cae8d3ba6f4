"""dnsbl-server: a DNS blocklist server fed by SQLite, rbldnsd data files and a backscatter trap."""

__version__ = "0.1.0"
