"""Lightning callbacks: throughput, text samples, progress."""
