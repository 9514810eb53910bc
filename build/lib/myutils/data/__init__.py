"""Image files and class-folder datasets: reading, splitting, class-balanced sampling."""
