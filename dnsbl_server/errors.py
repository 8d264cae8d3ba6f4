"""The exception tree. Every error we raise on purpose is a DnsblError; anything else is a bug.

    DnsblError            root: the CLI prints str(error) on one line and exits 2
    +-- ConfigError       bad settings, CLI arguments or config file values
    +-- TargetError       an address, CIDR, range, code, duration or date that does not parse
    +-- StoreError        the database cannot be opened, is the wrong version, or refuses a change

DNS outcomes (NXDOMAIN, REFUSED, ...) are values returned by the resolver, never exceptions.
"""


class DnsblError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(DnsblError):
    """Invalid configuration or command-line value."""


class TargetError(DnsblError):
    """A value given for a target, code, duration or date does not parse."""


class StoreError(DnsblError):
    """The database cannot do what was asked."""
