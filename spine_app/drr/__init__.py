"""Digitally reconstructed radiographs (DRR) from labelled CT volumes: AP + LAT training studies.

Modules by role: ``labels`` (label-map conventions), ``project`` (ray casting, beam geometry),
``masks`` (vertebra parts and landmarks from labels), ``fracture`` (3-D compression fractures),
``study`` (films, masks, truth.json), ``run`` (files in, study folders out). See docs/drr.md.
"""
