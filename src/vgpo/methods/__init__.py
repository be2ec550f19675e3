"""The RL method as parts: a sampler (what each step is), a credit (rewards to per-step advantages) and an
objective (the loss of a micro-batch), put together by name in `vgpo.methods.registry`; the update driver that
every objective shares lives in `vgpo.methods.driver`."""
