"""Bulk batches: OpenAI-style files and batches run as chunks on the GPU workers' bulk queues."""
