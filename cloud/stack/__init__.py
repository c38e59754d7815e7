"""The AWS stack: the CloudFormation template, its YAML, and deploying it."""
