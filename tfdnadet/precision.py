"""`train.precision: auto`: mixed_bfloat16 where the processor computes in bfloat16 natively, else float32."""

import dataclasses

import tensorflow as tf

AUTO = "auto"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instruction sets with native bfloat16 dot products
BF16_GPU_CAPABILITY = (8, 0)  # Ampere and later have bfloat16 tensor cores


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy to train in: `precision` itself, or for "auto" the best one this machine supports."""
    if precision != AUTO:
        return precision
    return "mixed_bfloat16" if bf16_reason() else "float32"


def bf16_reason() -> str:
    """Why this machine computes bfloat16 natively ("" if it does not), as shown next to the resolved choice."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) for gpu in gpus]
        if all(tuple(c) >= BF16_GPU_CAPABILITY for c in capabilities):
            return f"GPU compute capability {min(capabilities)[0]}.{min(capabilities)[1]}"
        return ""  # the GPUs do the work: the CPU's flags do not matter
    flags = cpu_flags()
    found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    return f"CPU has {', '.join(found).upper()}" if found else ""


def cpu_flags() -> set:
    """The x86 feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS or ARM without it)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def describe_precision(precision: str) -> str:
    """One line for the start of a run, e.g. "mixed_bfloat16 (auto: CPU has AVX512_BF16)"."""
    resolved = resolve_precision(precision)
    if precision != AUTO:
        return resolved
    return f"{resolved} (auto: {bf16_reason() or 'no native bfloat16 on this machine'})"


def with_resolved_precision(config):
    """A copy of `config` whose train.precision is concrete, so the run records what it really trained in."""
    train = dataclasses.replace(config.train, precision=resolve_precision(config.train.precision))
    return dataclasses.replace(config, train=train)
