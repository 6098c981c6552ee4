"""The report builder: typed readers of the result files, tables, verdicts, plots and the Typst build."""
