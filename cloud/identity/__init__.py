"""Device identities: the local CA and CRL, AWS IoT things, provisioning and revocation."""
