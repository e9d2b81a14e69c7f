"""Evaluation harness for LDM Lab: generation metrics (FID/KID), reconstruction metrics, domain classifier."""
