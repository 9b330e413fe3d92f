"""Run batches, ``Evaluate`` and the optimizers' evaluations on Ray: ``asynclm.ray.RayExecutor``.

Needs the ``ray`` extra: ``pip install 'asynclm[ray]'``. ``import asynclm`` never imports Ray; this
package imports it when a ``RayExecutor`` starts.
"""

from ._executor import RayExecutor, RemoteItemError

__all__ = ["RayExecutor", "RemoteItemError"]
