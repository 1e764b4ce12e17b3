"""The workbook: what the notebooks call, and the batch runner that executes them into HTML reports.

- `training`: run one table row from a notebook (train in process or under torchrun, then evaluate);
- `analysis`: a trained model's predictions, point selection, subdivision steps and sweeps;
- `figures`, `tables` and `runs_table`: matplotlib figures and pandas tables from tensors and run records
  (`runs_table`: the tables over a folder of runs, the model-zoo table among them);
- `runner` (`python -m pointrend_core.workbook run ...`): papermill execution per row, with
  `notebook_progress` (what runs, in the terminal), `status` (each row's outcome) and `html` (the reports).
"""
