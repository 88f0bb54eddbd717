"""The evaluations of a checkpoint: one module per evaluation (``clean``, ``imagenet_c``,
``domains``, ``ood``, ``probes``, ``zero_shot``, ``imagenet_folder``, ``drift``), each declaring its options,
cells, summaries, headlines and plots on an :class:`~robustfeat.evaluations.base.Evaluation`;
``banks`` (versioned lists of them per model family) and ``runner`` (``evaluate``: a bank
over checkpoints, resumable cell by cell). See docs/architecture.md."""
