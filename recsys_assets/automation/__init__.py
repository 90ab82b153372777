"""Jobs, schedules and sensors: what starts datagen runs and who hears about failures."""
