"""The `stc run` and `stc demo` commands: the CLI layer, which may use every layer below it
(the engine and adapters in `stc.integrations`, the synthetic stream and shipped model of
`stc.eval`). `stc eval` and `stc bench` register from `stc.eval`."""
