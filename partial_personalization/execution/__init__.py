"""Where computations run: TFF's local C++ runtime, remote TFF workers, or
TensorFlow on GPUs (`runtime.set_executor`, `runtime.ExecutorConfig`), with
the workers' thread settings (`worker_config`) and the supported TFF
version's internals (`tff_compat`, the one door to them).

May import: nothing else of partial_personalization.
"""
