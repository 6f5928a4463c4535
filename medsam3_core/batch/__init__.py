"""Many scans with the model loaded once: the engine of ``medsam3 batch`` (command line in
:mod:`medsam3_core.cli.batch`).

* :mod:`~medsam3_core.batch.cases` turns files, folders, DICOM trees and manifests into cases;
* :mod:`~medsam3_core.batch.recipe` resolves the options once and describes each case's job;
* :mod:`~medsam3_core.batch.runner` runs the cases (read-ahead, atomic case folders, done records);
* :mod:`~medsam3_core.batch.records` and :mod:`~medsam3_core.batch.summary` keep what was done;
* :mod:`~medsam3_core.batch.distributed` shares the cases out over ``torchrun`` ranks.

``python -m medsam3_core.batch`` is the command itself, which is what ``torchrun -m`` needs::

    torchrun --nproc_per_node=4 -m medsam3_core.batch scans/ -p kidney liver -o out/
"""
