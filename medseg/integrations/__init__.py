"""Bridges from medseg to other applications.

``medseg.integrations.slicer`` holds the Slicer-free half of the 3D Slicer module in
``tools/slicer/MedSeg``. It imports only the standard library, so Slicer's Python can use it
without torch (``pip install --no-deps medseg`` is enough there). ``medseg.integrations.brats_container``
is the entry point of a BraTS challenge container (``docker/Dockerfile``).
"""
