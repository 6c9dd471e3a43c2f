"""Data-parallel curvature products with JAX's own SPMD machinery (``jax.sharding`` and ``jax.shard_map``).

The data arguments of an operator are placed with ``NamedSharding(mesh, P("data"))`` along their leading
(sample) axis; params and the vector are replicated. Each device computes the product of its own samples
(chunked with ``batch_size`` if asked), and one ``lax.psum`` of the flat result over the ``"data"`` axis
gives the full-batch mean: one all-reduce of ``P`` scalars per product. Everything runs inside the
caller's compiled program, so a Lanczos loop over the product never returns to the host.

Several hosts: call ``jax.distributed.initialize()`` on every host first; :func:`data_mesh` then spans
the devices of all hosts (``jax.devices()`` is global), and data given as a global ``jax.Array`` already
sharded over the mesh (e.g. from ``jax.make_array_from_process_local_data``) is used as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["DATA_AXIS", "data_mesh"]

DATA_AXIS = "data"


def data_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D device mesh with axis ``"data"`` for data-parallel curvature products and training.

    Args:
        devices: how many devices to use (the first ``devices`` of ``jax.devices()``, which spans every
            host after ``jax.distributed.initialize()``), a list of devices, or ``None`` for all of them.

    Returns:
        ``jax.sharding.Mesh`` of shape ``{"data": num_devices}``, to pass as
        ``analysis.hessian_operator(..., mesh=mesh)`` or ``fflab.train.fit(..., mesh=mesh)``.

    Raises:
        ValueError: more devices asked for than there are, or an empty list.
    """
    available = jax.devices()
    if devices is None:
        chosen = list(available)
    elif isinstance(devices, int | np.integer) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"asked for {devices} devices but {len(available)} are available ({available[0].platform}); "
                "on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N"
            )
        chosen = list(available[: int(devices)])
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices must name at least one device, got an empty list")
    return Mesh(np.array(chosen), (DATA_AXIS,))


def num_shards(mesh: Mesh) -> int:
    """Size of the mesh's ``"data"`` axis; a ``ValueError`` if the argument is not a mesh with that axis."""
    if not isinstance(mesh, Mesh):
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh (see analysis.data_mesh), got {type(mesh).__name__}"
        )
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"mesh needs a {DATA_AXIS!r} axis to shard the samples over, got axes {mesh.axis_names}"
        )
    return int(mesh.shape[DATA_AXIS])


def check_divisible(num_samples: int, mesh: Mesh) -> int:
    """Samples per device; a ``ValueError`` when they do not split evenly over the ``"data"`` axis."""
    shards = num_shards(mesh)
    if num_samples % shards:
        lower = num_samples - num_samples % shards
        raise ValueError(
            f"{num_samples} samples do not split evenly over the {shards} devices of the mesh's "
            f"{DATA_AXIS!r} axis; pass a multiple of {shards} (e.g. the first {lower} samples)"
        )
    return num_samples // shards


def place(mesh: Mesh, params, args):
    """``params`` replicated and every data leaf split along its leading axis over ``"data"``."""
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P(DATA_AXIS))
    params = jax.tree_util.tree_map(lambda a: jax.device_put(a, replicated), params)
    args = jax.tree_util.tree_map(lambda a: jax.device_put(a, split), args)
    return params, args


def sharded_mean(local_product: Callable, mesh: Mesh, params, v, args):
    """Full-batch mean product from per-device means: ``psum_d(local_d) / D`` (equal shards).

    ``local_product(params, v, args) -> (dim,)`` runs on each device with its own samples; the flat
    result is summed over the ``"data"`` axis in one all-reduce.
    """
    shards = mesh.shape[DATA_AXIS]

    def per_device(params, v, args):
        # Mark the replicated params and vector as device-varying first: otherwise differentiating with
        # respect to them inside shard_map inserts its own psum (the transpose of the implicit broadcast
        # of a replicated value), an all-reduce per gradient leaf. The flat vector, not the pytree, then
        # goes into psum: one all-reduce of P scalars per product.
        params, v = lax.pcast((params, v), DATA_AXIS, to="varying")
        return lax.psum(local_product(params, v, args), DATA_AXIS) / shards

    # Specs are pytree prefixes: all params and the vector replicated, every data leaf split on axis 0.
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)), out_specs=P())(
        params, v, args
    )
