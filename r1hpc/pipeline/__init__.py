"""The DeepSeek-R1 pipeline: its stages as a chain of r1hpc jobs, and the report comparing them."""
