"""The KFP pipeline: its wiring, the kfp.local runner, and compile/submit for clusters."""
