"""Data: sources (hf://, s3://, https://, pvc://, files), formats (detect, convert to canonical messages),
streaming validation, subset/split, tokenization with masking, padding-free batching; and the dataset stage
(``hone.data.stage.check_dataset`` / ``prepare_dataset``)."""
