"""What the trained network is used for: the Table 7 ablation, the lung field and lesion burden (§3.4), the
encoder as a COVID-19 slice classifier (§2.8, Table 6) and classifier-gated segmentation."""
