"""MONAI Label integration: a server app that pre-segments spine radiographs with the bundle,
classifies studies Normal/Damaged and fine-tunes the bundle from the labels annotators save.

- :mod:`.encoding`: the label PNG a client gets and saves (one bit per channel, overlaps kept);
- :mod:`.studies`: image id -> (study, view, class) in a flat MONAI Label studies folder;
- :mod:`.service`: segmentation / classification of a datastore image through the bundle's own
  inference config (the code path of ``spine-app infer``);
- :mod:`.finetune`: datastore labels -> datalist -> the bundle's training config -> keep the new
  weights only if the validation score did not get worse;
- :mod:`.security`: what the server accepts (plain ids, CORS allow-list, deletes, upload limit, labels
  that fit their film) and the ASGI guard that enforces it;
- :mod:`.tasks`, :mod:`.app` and :mod:`.server`: the MONAI Label classes and the secured FastAPI app
  (imported only when ``monailabel`` is).

Nothing here imports ``monailabel`` at module level except ``tasks``, ``app`` and ``server``, so the
helpers and tests of the encoding run without the server installed. See docs/monailabel.md.
"""
