"""The analysis page of analyze.py: HTML, pictures and CSV tables (the numbers come from utils/analysis/)."""
