raise ImportError("this plugin's dependency is missing")
