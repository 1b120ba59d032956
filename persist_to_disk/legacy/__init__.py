"""The cache format of persist-to-disk 0.0.7, for moving caches to it and from it.

0.0.7 keeps one folder per function (per groupby leaf, as here) holding ``<bucket>.pkl`` files:
each is ``pickle.dump({key tuple: result}, protocol=4)`` with no header, where the key tuple is
``((name, value), ...)`` sorted by name, as ours, except that an ``argparse.Namespace`` value is
its ``json.dumps(vars(ns))`` text. The bucket is ``md5(pickle.dumps(key, protocol=3)) %
hashsize`` (or, with ``hash_method='json'``, the md5 of the key as sorted compact JSON). A bucket
file is read and rewritten whole under the lock file ``<bucket>.pkl.lock`` (``lock_granularity
= 'call'``) or ``func_persist_lock.lock`` in the leaf folder (``'func'``, its default).

* :func:`export_tree`: our stores to bucket files, merged into the ones already there.
* :func:`import_tree`: bucket files to our stores, so that our decorator hits those entries.

The decorator's look-up of imported entries whose key it spells differently (groupby values,
``Namespace`` arguments) is part of the core: :mod:`persist_to_disk.imported`, on which this
package builds (never the reverse).
"""

from .exporting import ExportReport, export_tree
from .importing import ImportReport, import_tree

__all__ = ["ExportReport", "ImportReport", "export_tree", "import_tree"]
