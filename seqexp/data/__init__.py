"""Data: sources -> readers -> tag schemes -> sentences -> encoding -> batches."""
