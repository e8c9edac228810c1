"""Ranking fidelity: how well a proxy's score predicts stand-alone accuracy (``study``), with the
statistics (``stats``), the ground truth (``ground_truth``) and the zero-cost baselines (``zero_cost``)."""
