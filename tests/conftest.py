"""Shared pytest setup: CPU JAX, fp32 matmuls, deterministic."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Exact fp32 matmuls so parity tests compare like with like.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
