"""The streaming engine: `session.StreamingSession` (frames in, answers out, at any time; the ReKV
loop), `options.SessionOptions` (its knobs) and `block_store` (where frame blocks live). The
public names are exported, lazily, by `stc.integrations`."""
