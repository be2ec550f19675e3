"""Several processes behind one small interface: the process group (`distributed`: rank, world size, gathers,
the main-process-writes rule; one process is the N = 1 case) and FSDP2 sharding of the trained weights
(`sharding`)."""
