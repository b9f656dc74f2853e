import os, sys
import json
from typing import List,Dict


def total_value(items : List[Dict]) -> float:
    total=0
    for item in items :
        total+= item['price']*item['quantity']
    return total



def low_stock(items, threshold = 5):
    return [ item['name'] for item in items if item['quantity']<threshold ]
