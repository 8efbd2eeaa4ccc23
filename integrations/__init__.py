"""Model adapters and the streaming engine (installed as `stc.integrations`)."""
