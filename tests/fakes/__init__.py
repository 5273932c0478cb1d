"""Local far ends for the cloud SDKs: real wire formats, in-memory state, loopback only."""
